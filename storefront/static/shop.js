// The demo shop: a product list and a cart that check out through monime-checkout, and the
// pages Monime's shopper comes back to. window.SHOP.apiUrl (from /config.js) is the service.
"use strict";

const PRODUCTS = [
  { id: "starter-bundle", name: "Starter bundle", about: "Rice, oil and pepper for a week", price: 2500, color: "#b45309" },
  { id: "gift-wrap", name: "Gift wrap", about: "Country-cloth pattern paper", price: 150, color: "#be185d" },
  { id: "solar-lantern", name: "Solar lantern", about: "Charges in a day, lights a night", price: 18500, color: "#ca8a04" },
  { id: "gara-scarf", name: "Gara scarf", about: "Tie-dyed in Makeni", price: 9500, color: "#1d4ed8" },
  { id: "ginger-beer", name: "Ginger beer, 6 bottles", about: "Home-brewed, very gingery", price: 4200, color: "#15803d" },
  { id: "palm-soap", name: "Palm oil soap", about: "Black soap, three bars", price: 1200, color: "#57534e" },
];
const CURRENCY = "SLE";
const FINAL = ["completed", "cancelled", "expired"];
const EXPLAIN = {
  pending: "Waiting for Monime to confirm the payment…",
  completed: "Paid: Monime confirmed the payment. Thank you!",
  cancelled: "You cancelled the payment; nothing was charged. Your cart is kept.",
  expired: "The checkout expired before it was paid; nothing was charged.",
};

function money(value, currency = CURRENCY) {
  return `${currency} ${(value / 100).toFixed(2)}`;
}

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

// --- the cart, kept in localStorage as {productId: quantity} ---------------------------------

function cart() {
  return JSON.parse(localStorage.getItem("cart") || "{}");
}

function saveCart(items) {
  localStorage.setItem("cart", JSON.stringify(items));
  renderCart();
}

function add(productId, change) {
  const items = cart();
  items[productId] = (items[productId] || 0) + change;
  if (items[productId] <= 0) delete items[productId];
  saveCart(items);
}

function cartLines() {
  const items = cart();
  return PRODUCTS.filter((product) => items[product.id]).map((product) => ({ product, quantity: items[product.id] }));
}

// --- the shop page --------------------------------------------------------------------------

function renderProducts() {
  const list = document.getElementById("products");
  for (const product of PRODUCTS) {
    const tile = el("div", { className: "tile", textContent: product.name[0] });
    tile.style.background = product.color;
    const button = el("button", { textContent: "Add to cart", onclick: () => add(product.id, 1) });
    const item = el("li", { className: "product" }, tile, el("h3", { textContent: product.name }),
      el("p", { textContent: product.about }), el("p", { className: "price", textContent: money(product.price) }), button);
    item.dataset.product = product.id;
    list.append(item);
  }
}

function renderCart() {
  const lines = cartLines();
  const list = document.getElementById("cart-lines");
  list.replaceChildren(...lines.map(({ product, quantity }) => {
    const line = el("li", {},
      el("span", { className: "line", textContent: `${quantity} × ${product.name}` }),
      el("span", {}, el("button", { textContent: "−", title: "one less", onclick: () => add(product.id, -1) }), " ",
        el("button", { textContent: "+", title: "one more", onclick: () => add(product.id, 1) })));
    line.dataset.product = product.id;
    return line;
  }));
  if (!lines.length) list.append(el("li", { className: "empty", textContent: "Nothing yet." }));
  const total = lines.reduce((sum, { product, quantity }) => sum + product.price * quantity, 0);
  document.getElementById("cart-total").textContent = money(total);
  document.getElementById("checkout").disabled = !lines.length;
}

function newOrderId() {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return "ord_" + Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

async function checkout() {
  const button = document.getElementById("checkout");
  const error = document.getElementById("error");
  const orderId = newOrderId();
  const order = {
    name: `Salone Goods · ${cartLines().reduce((count, line) => count + line.quantity, 0)} items`,
    orderId,
    lineItems: cartLines().map(({ product, quantity }) => ({
      type: "custom", name: product.name, reference: product.id, quantity,
      price: { currency: CURRENCY, value: product.price },
    })),
    metadata: { source: "demo-storefront" },
  };
  button.disabled = true;
  error.textContent = "";
  try {
    const response = await fetch(`${SHOP.apiUrl}/api/checkout`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(order),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error ? answer.error.message : `the service answered ${response.status}`);
    location.assign(answer.redirectUrl);
  } catch (problem) {
    error.textContent = `Could not start the checkout: ${problem.message}`;
    button.disabled = false;
  }
}

// --- the pages the shopper comes back to ------------------------------------------------------

function showOrder(order) {
  const status = document.getElementById("status");
  status.textContent = order.status;
  status.className = `status ${order.status}`;
  document.getElementById("explain").textContent = EXPLAIN[order.status] || "";
  document.getElementById("order-lines").replaceChildren(...order.lineItems.map((item) => el("tr", {},
    el("td", { textContent: `${item.quantity} × ${item.name}` }),
    el("td", { textContent: money(item.price.value * item.quantity, item.price.currency) }))));
  document.getElementById("order-total").textContent = money(order.amount.value, order.amount.currency);
  if (order.status === "completed") localStorage.removeItem("cart");
}

async function poll(orderId, giveUp) {
  try {
    const response = await fetch(`${SHOP.apiUrl}/api/orders/${encodeURIComponent(orderId)}`);
    if (response.status === 404) return showOrder({ status: "unknown", lineItems: [], amount: { value: 0 } });
    if (response.ok) {
      const order = await response.json();
      showOrder(order);
      if (FINAL.includes(order.status)) return;
    }
  } catch (problem) {
    // the service may be restarting: ask again
  }
  if (Date.now() < giveUp) {
    setTimeout(() => poll(orderId, giveUp), 1000);
  } else {
    document.getElementById("explain").textContent = "Not confirmed yet: refresh this page in a minute.";
  }
}

function orderPage() {
  const orderId = new URLSearchParams(location.search).get("orderId") || "";
  const cancelled = location.pathname.endsWith("/cancelled");
  document.title = "Your order · Salone Goods";
  document.getElementById("heading").textContent = cancelled ? "Payment cancelled" : "Thank you for your order";
  document.getElementById("order-id").textContent = orderId;
  document.getElementById("order").hidden = false;
  poll(orderId, Date.now() + 2 * 60 * 1000);
}

function shopPage() {
  renderProducts();
  renderCart();
  document.getElementById("checkout").onclick = checkout;
  document.getElementById("shop").hidden = false;
}

if (location.pathname.startsWith("/checkout/")) orderPage();
else shopPage();
