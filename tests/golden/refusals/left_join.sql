SELECT COUNT(*) FROM bank.loans l LEFT JOIN insurer.policies p ON l.customer_id = p.customer_id
