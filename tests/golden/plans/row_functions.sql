SELECT COUNT(*) AS n FROM bank.customers c JOIN payments.accounts a ON c.customer_id = a.customer_id
WHERE UPPER(c.branch) LIKE 'NORTH%' AND COALESCE(a.monthly_txn_count, 0) % 2 = 0
  AND CASE WHEN c.age > 60 THEN c.income ELSE 0 END > a.monthly_txn_amount
