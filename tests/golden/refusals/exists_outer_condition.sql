SELECT COUNT(*) FROM bank.customers c WHERE EXISTS (SELECT 1 FROM insurer.policies p WHERE p.customer_id = c.customer_id AND p.premium > c.income)
