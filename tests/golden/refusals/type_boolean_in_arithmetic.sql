SELECT COUNT(*) FROM bank.loans WHERE amount * TRUE > 1
