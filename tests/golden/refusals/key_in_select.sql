SELECT customer_id, COUNT(*) FROM bank.loans
