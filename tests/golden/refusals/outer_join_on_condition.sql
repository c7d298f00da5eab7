SELECT COUNT(*) FROM bank.customers c LEFT JOIN bank.loans l ON c.customer_id = l.customer_id AND l.amount > 100
