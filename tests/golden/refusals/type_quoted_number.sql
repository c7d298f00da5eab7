SELECT COUNT(*) FROM bank.loans WHERE amount > '5'
