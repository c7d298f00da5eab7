SELECT COUNT(*) AS n FROM bank.customers c
JOIN bank.loans l ON c.customer_id = l.customer_id AND l.term_months = 36
JOIN insurer.policies p ON p.customer_id = l.customer_id AND p.premium * 100 > l.amount
