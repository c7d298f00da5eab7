SELECT COUNT(*) FROM bank.customers c JOIN payments.accounts a ON c.customer_id = a.customer_id WHERE c.region || 'x' = a.segment
