"use strict";

(() => {
  const PATHS = {
    llm: "Composed by the language model",
    llm_repaired: "Language model (repaired)",
    fallback: "Retrieval fallback",
    heuristic: "Co-purchase & similarity signals",
  };
  const log = document.getElementById("log");
  const form = document.getElementById("chat-form");
  const need = document.getElementById("need");
  const budget = document.getElementById("budget");
  const user = document.getElementById("user");
  const send = document.getElementById("send");
  const status = document.getElementById("status");
  const bundleTemplate = document.getElementById("bundle-template");
  const cardTemplate = document.getElementById("card-template");
  const MAX_MESSAGES = 30; // the API takes at most 30 turns: older ones are left out, the latest kept
  let messages = [];
  let conversation = 0; // bumped by "New conversation": a reply still streaming then belongs to no one
  let inFlight = null;

  const money = (value) =>
    value == null ? "" : new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" }).format(value);

  function addMessage(role, text, extraClass) {
    const item = document.createElement("li");
    item.className = `msg ${role}${extraClass ? " " + extraClass : ""}`;
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    bubble.textContent = text;
    item.appendChild(bubble);
    log.appendChild(item);
    item.scrollIntoView({ block: "end", behavior: "smooth" });
    return item;
  }

  function renderBundles(item, response) {
    const wrap = document.createElement("div");
    wrap.className = "bundles";
    const path = document.createElement("p");
    path.className = `path path-${response.produced_by}`;
    path.textContent = `${PATHS[response.produced_by] || response.produced_by}` +
      (response.model ? ` · ${response.model}` : "") +
      ` · ${response.candidates_considered} candidates · ${Math.round(response.latency_ms)} ms`;
    path.dataset.producedBy = response.produced_by;
    wrap.appendChild(path);
    response.bundles.forEach((bundle, index) => {
      const node = bundleTemplate.content.firstElementChild.cloneNode(true);
      node.setAttribute("aria-label", `Bundle ${index + 1}: ${bundle.title}`);
      node.querySelector(".bundle-title").textContent = bundle.title;
      node.querySelector(".bundle-total").textContent =
        bundle.total_price == null ? "" : `Total ${money(bundle.total_price)}`;
      node.querySelector(".bundle-reason").textContent = bundle.reason;
      const cards = node.querySelector(".cards");
      for (const product of bundle.items) {
        const card = cardTemplate.content.firstElementChild.cloneNode(true);
        card.dataset.id = product.id;
        card.querySelector(".card-category").textContent =
          product.category.length ? product.category[product.category.length - 1] : "Uncategorised";
        card.querySelector(".card-title").textContent = product.title;
        card.querySelector(".card-title").title = product.title;
        card.querySelector(".card-price").textContent = product.price == null ? "Price not listed" : money(product.price);
        cards.appendChild(card);
      }
      wrap.appendChild(node);
    });
    item.appendChild(wrap);
  }

  function parseEvent(block) {
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
    }
    return { event, data: data.length ? JSON.parse(data.join("\n")) : null };
  }

  async function ask(text) {
    const mine = conversation;
    messages.push({ role: "user", content: text });
    const asked = addMessage("user", text);
    const reply = addMessage("assistant", "", "pending");
    const bubble = reply.querySelector(".bubble");
    const body = { messages: messages.slice(-MAX_MESSAGES) };
    if (budget.value) body.budget = Number(budget.value);
    if (user.value.trim()) body.user_id = user.value.trim();
    send.disabled = true;
    status.textContent = "Thinking…";
    let answer = "";
    let finished = false;
    inFlight = new AbortController();
    try {
      const response = await fetch("/v1/chat", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify(body),
        signal: inFlight.signal,
      });
      if (!response.ok) {
        const error = await response.json().catch(() => ({ error: response.statusText }));
        const detail = Array.isArray(error.detail)
          ? error.detail.map((d) => `${d.field}: ${d.message}`).join("; ")
          : error.detail || error.error;
        throw new Error(`${response.status} ${detail}`);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const { event, data } = parseEvent(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (event === "message") {
            answer += data.text;
            bubble.textContent = answer;
          } else if (event === "clarify") {
            answer = data.question;
            bubble.textContent = answer;
            reply.classList.add("clarify");
          } else if (event === "bundles") {
            renderBundles(reply, data);
          } else if (event === "error") {
            reply.classList.add("error");
            bubble.textContent = `${answer}\nSorry, something went wrong: ${data.detail || data.error}`;
          } else if (event === "done") {
            finished = true;
            status.textContent = `Answered in ${Math.round(data.latency_ms)} ms.`;
          }
        }
      }
      if (!finished) throw new Error("the answer was cut off; please ask again");
      if (mine === conversation) messages.push({ role: "assistant", content: answer.slice(0, 2000) || "(no answer)" });
    } catch (err) {
      if (mine === conversation) {
        reply.classList.add("error");
        bubble.textContent = `Sorry, the request failed: ${err.message}`;
        status.textContent = "";
        messages.pop(); // the turn was not answered: it leaves the history, and its bubble says so
        asked.classList.add("unsent");
        asked.title = "Not sent: ask again";
      }
    } finally {
      reply.classList.remove("pending");
      if (mine === conversation) {
        reply.scrollIntoView({ block: "end", behavior: "smooth" });
        send.disabled = false;
        need.focus();
      }
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = need.value.trim();
    if (!text || send.disabled) return;
    need.value = "";
    ask(text);
  });
  need.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  for (const chip of document.querySelectorAll(".chip")) {
    chip.addEventListener("click", () => {
      need.value = chip.textContent;
      form.requestSubmit();
    });
  }
  document.getElementById("reset").addEventListener("click", () => {
    conversation += 1;
    if (inFlight) inFlight.abort();
    send.disabled = false;
    messages = [];
    for (const node of [...log.children].slice(1)) node.remove();
    status.textContent = "Started a new conversation.";
    need.focus();
  });
})();
