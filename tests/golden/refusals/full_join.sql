SELECT COUNT(*) FROM bank.loans l FULL OUTER JOIN insurer.policies p ON l.customer_id = p.customer_id JOIN payments.accounts a ON a.customer_id = l.customer_id
