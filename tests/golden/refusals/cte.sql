WITH x AS (SELECT customer_id FROM bank.loans) SELECT COUNT(*) FROM x
