SELECT COUNT(*) FROM bank.loans WHERE amount / defaulted > 2
