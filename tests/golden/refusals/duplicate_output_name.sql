SELECT COUNT(*) AS n, SUM(amount) AS n FROM bank.loans
