SELECT COUNT(*) FROM bank.loans WHERE SUM(amount) > 10
