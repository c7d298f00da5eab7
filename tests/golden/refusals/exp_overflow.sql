SELECT SUM(EXP(amount)) FROM bank.loans
