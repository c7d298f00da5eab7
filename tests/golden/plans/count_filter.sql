SELECT COUNT(p.premium) AS priced, COUNT(*) FILTER (WHERE a.monthly_txn_count > 10) AS active,
       AVG(p.premium) FILTER (WHERE a.segment = 'premium') AS premium_avg
FROM payments.accounts a JOIN insurer.policies p ON a.customer_id = p.customer_id
