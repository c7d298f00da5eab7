SELECT COUNT(*) FROM bank.loans WHERE amount / 0 > 2
