SELECT CASE WHEN c.age < 40 THEN 'young' ELSE 'old' END AS band, FLOOR(a.monthly_txn_count / 50) AS bucket,
       COUNT(*) AS n
FROM bank.customers c JOIN payments.accounts a ON c.customer_id = a.customer_id
GROUP BY 1, 2
