SELECT COUNT(*) FROM bank.loans l FULL OUTER JOIN insurer.policies p ON l.customer_id = p.customer_id AND p.premium > 100
