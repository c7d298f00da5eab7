SELECT COUNT(*) FROM bank.customers c WHERE c.customer_id NOT IN (SELECT customer_id FROM insurer.policies)
