SELECT COUNT(*) FROM bank.loans l JOIN insurer.policies p ON l.customer_id = p.customer_id JOIN payments.accounts a ON p.customer_id = l.customer_id
