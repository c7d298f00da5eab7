SELECT c.region, a.segment, COUNT(*) AS loans, AVG(l.defaulted) AS default_rate
FROM bank.customers c
JOIN bank.loans l ON c.customer_id = l.customer_id
JOIN payments.accounts a ON a.customer_id = c.customer_id
JOIN insurer.policies p ON p.customer_id = c.customer_id
WHERE a.monthly_txn_count > 10 AND p.open_claim = 1
GROUP BY c.region, a.segment HAVING loans > 20
