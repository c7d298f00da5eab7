SELECT COUNT(*) FROM bank.loans WHERE EXISTS (SELECT 1 FROM insurer.policies)
