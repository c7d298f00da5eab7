SELECT customer_id, COUNT(*) FROM bank.loans GROUP BY customer_id
