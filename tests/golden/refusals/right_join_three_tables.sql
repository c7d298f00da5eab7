SELECT COUNT(*) FROM bank.customers c JOIN insurer.policies p ON c.customer_id = p.customer_id RIGHT JOIN bank.loans l ON l.customer_id = c.customer_id
