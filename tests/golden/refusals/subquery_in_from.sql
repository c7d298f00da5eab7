SELECT COUNT(*) FROM (SELECT customer_id FROM bank.loans LIMIT 10) AS t
