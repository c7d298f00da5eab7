SELECT term_months, SUM(defaulted = 1) AS defaults,
       SUM(CASE WHEN amount > 50000 THEN amount ELSE 0 END) AS big_total
FROM bank.loans GROUP BY term_months
