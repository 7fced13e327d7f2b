document.getElementById("main").textContent = "codexmesh";
