WITH x AS (SELECT customer_id, SUM(amount) AS total FROM bank.loans GROUP BY customer_id) SELECT AVG(total) FROM x
