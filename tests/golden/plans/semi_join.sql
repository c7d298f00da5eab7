SELECT c.region, COUNT(*) AS n
FROM bank.customers c
WHERE c.customer_id IN (SELECT customer_id FROM insurer.policies WHERE open_claim = 1)
  AND NOT EXISTS (SELECT 1 FROM bank.loans l WHERE l.customer_id = c.customer_id AND l.defaulted = 1)
GROUP BY c.region
