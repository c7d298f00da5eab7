SELECT COUNT(*) FROM bank.loans WHERE loan_id > 100
