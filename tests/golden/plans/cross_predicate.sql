SELECT COUNT(DISTINCT l.customer_id) AS people
FROM bank.loans l JOIN insurer.policies p ON l.customer_id = p.customer_id
WHERE l.amount > 2 * p.claims_amount OR p.premium BETWEEN 100 AND 500
