SELECT AVG(income / age) AS income_per_year, SUM(LN(age)) AS log_age FROM bank.customers
