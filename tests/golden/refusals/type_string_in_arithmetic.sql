SELECT COUNT(*) FROM bank.loans WHERE amount + 'x' > 1
