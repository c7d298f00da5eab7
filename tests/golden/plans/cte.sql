WITH big AS (SELECT customer_id, amount, term_months FROM bank.loans WHERE amount > 20000)
SELECT b.term_months, COUNT(*) AS n, SUM(b.amount) AS total
FROM big b JOIN insurer.policies p ON b.customer_id = p.customer_id
GROUP BY b.term_months
