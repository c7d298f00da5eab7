SELECT COUNT(*) AS n FROM bank.loans HAVING n > 'many'
