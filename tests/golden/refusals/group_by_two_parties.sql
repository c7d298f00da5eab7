SELECT COUNT(*) FROM bank.customers c JOIN insurer.policies p ON c.customer_id = p.customer_id GROUP BY c.branch || p.product
