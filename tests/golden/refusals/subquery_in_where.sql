SELECT COUNT(*) FROM bank.loans WHERE customer_id IN (SELECT customer_id FROM insurer.policies) OR amount > 5
