SELECT COUNT(*) FROM bank.loans WHERE customer_id = 42
