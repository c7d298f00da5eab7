SELECT COUNT(DISTINCT l.customer_id) FROM bank.customers c LEFT JOIN bank.loans l ON c.customer_id = l.customer_id
