SELECT term_months, MEDIAN(amount) AS med, MIN(amount) AS lo, MAX(amount) AS hi, QUANTILE_DISC(amount, 0.9) AS p90 FROM bank.loans GROUP BY term_months
