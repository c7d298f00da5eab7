SELECT COUNT(*) FROM bank.loans l JOIN insurer.policies p ON l.customer_id = l.customer_id
