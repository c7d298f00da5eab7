SELECT COUNT(DISTINCT customer_id) FROM bank.loans l JOIN insurer.policies p ON l.customer_id = p.customer_id
