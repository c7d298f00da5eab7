SELECT SUM(amount % defaulted) FROM bank.loans
