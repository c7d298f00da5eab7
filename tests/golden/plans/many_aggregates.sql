SELECT WITH DIFFERENTIAL_PRIVACY OPTIONS (epsilon = 1.0, delta = 1e-6)
       COUNT(*) AS n, SUM(age) AS age_sum, SUM(income) AS income_sum,
       COUNT(*) FILTER (WHERE age < 25) AS n25, COUNT(*) FILTER (WHERE age < 35) AS n35,
       COUNT(*) FILTER (WHERE age < 45) AS n45, COUNT(*) FILTER (WHERE age < 55) AS n55,
       COUNT(*) FILTER (WHERE age < 65) AS n65, COUNT(*) FILTER (WHERE age < 75) AS n75,
       COUNT(*) FILTER (WHERE income < 20000) AS low, COUNT(*) FILTER (WHERE income < 50000) AS mid,
       COUNT(*) FILTER (WHERE income < 100000) AS high
FROM bank.customers
