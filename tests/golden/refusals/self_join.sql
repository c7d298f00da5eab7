SELECT COUNT(*) FROM bank.loans a JOIN bank.loans b ON a.customer_id = b.customer_id
