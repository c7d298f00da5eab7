SELECT COUNT(*) FROM bank.loans WHERE amount IS NULL
