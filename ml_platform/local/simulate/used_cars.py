"""Synthetic US used-car listings with the real data set's 66 columns, formats and missing-value patterns.

Price depends nonlinearly on make and model tier, age, mileage, condition flags, body and region, with a
heavy right tail. A small share of rows is broken the ways real exports break.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml_platform.local.simulate.breakage import break_rows
from ml_platform.spec import builtin_specs

COLUMNS = builtin_specs()["used_cars"].column_names

# make -> (price tier, [(model, model tier, body)])
MAKES = {
    "Toyota": (1.0, [("Camry", 1.0, "Sedan"), ("Corolla", 0.8, "Sedan"), ("RAV4", 1.15, "SUV / Crossover"),
                     ("Tacoma", 1.3, "Pickup Truck"), ("Highlander", 1.35, "SUV / Crossover")]),
    "Ford": (0.95, [("F-150", 1.4, "Pickup Truck"), ("Escape", 0.9, "SUV / Crossover"),
                    ("Explorer", 1.2, "SUV / Crossover"), ("Mustang", 1.25, "Coupe"), ("Focus", 0.7, "Sedan")]),
    "Honda": (1.0, [("Civic", 0.85, "Sedan"), ("Accord", 1.0, "Sedan"), ("CR-V", 1.1, "SUV / Crossover"),
                    ("Pilot", 1.3, "SUV / Crossover")]),
    "Chevrolet": (0.95, [("Silverado 1500", 1.45, "Pickup Truck"), ("Malibu", 0.8, "Sedan"),
                         ("Equinox", 0.95, "SUV / Crossover"), ("Tahoe", 1.7, "SUV / Crossover")]),
    "Nissan": (0.85, [("Altima", 0.85, "Sedan"), ("Rogue", 0.95, "SUV / Crossover"), ("Sentra", 0.7, "Sedan")]),
    "Hyundai": (0.8, [("Elantra", 0.8, "Sedan"), ("Tucson", 0.95, "SUV / Crossover")]),
    "Jeep": (1.1, [("Wrangler", 1.35, "SUV / Crossover"), ("Grand Cherokee", 1.3, "SUV / Crossover")]),
    "RAM": (1.2, [("1500", 1.4, "Pickup Truck")]),
    "BMW": (1.7, [("3 Series", 1.0, "Sedan"), ("5 Series", 1.3, "Sedan"), ("X5", 1.5, "SUV / Crossover")]),
    "Mercedes-Benz": (1.85, [("C-Class", 1.0, "Sedan"), ("E-Class", 1.3, "Sedan"), ("GLE", 1.5, "SUV / Crossover")]),
    "Lexus": (1.6, [("RX", 1.2, "SUV / Crossover"), ("ES", 1.0, "Sedan")]),
    "Tesla": (2.2, [("Model 3", 1.0, "Sedan"), ("Model X", 1.9, "SUV / Crossover")]),
    "Porsche": (3.6, [("911", 1.6, "Coupe"), ("Cayenne", 1.0, "SUV / Crossover")]),
}
MAKE_NAMES = list(MAKES)
MAKE_P = np.array([14, 14, 11, 13, 8, 6, 6, 5, 5, 5, 4, 2, 1], dtype=float)
MAKE_P /= MAKE_P.sum()
COLORS = ["Black", "White", "Silver", "Gray", "Blue", "Red", "UNKNOWN"]
CITIES = [("Houston", 29.76, -95.37), ("Los Angeles", 34.05, -118.24), ("Miami", 25.76, -80.19),
          ("Chicago", 41.88, -87.63), ("Seattle", 47.61, -122.33), ("Denver", 39.74, -104.99),
          ("Boston", 42.36, -71.06), ("Phoenix", 33.45, -112.07)]
REGION_PREMIUM = np.array([0.98, 1.08, 1.0, 0.96, 1.07, 1.03, 1.02, 0.99])
FLAGS = ["fleet", "frame_damaged", "has_accidents", "isCab", "salvage", "theft_title"]


def _fmt(values: np.ndarray, fmt: str, missing: np.ndarray, missing_text: str = "") -> pd.Series:
    s = pd.Series([fmt.format(v) for v in values], dtype=object)
    s[missing] = missing_text
    return s


def _bools(x: np.ndarray) -> np.ndarray:
    return np.where(x, "True", "False").astype(object)


def generate(rng: np.random.Generator, n: int, id_offset: int, drift: float = 0.0) -> pd.DataFrame:
    """n clean rows as the source would export them: every value a string, '' or '--' for missing. drift > 0 moves
    the market: every price (1 + drift) times higher and older cars losing value more slowly, the same features."""
    make_idx = rng.choice(len(MAKE_NAMES), size=n, p=MAKE_P)
    make = np.array(MAKE_NAMES, dtype=object)[make_idx]
    model, model_tier, body, make_tier = (np.empty(n, dtype=object), np.empty(n), np.empty(n, dtype=object),
                                          np.empty(n))
    pick = rng.random(n)
    for i, name in enumerate(MAKE_NAMES):
        rows = make_idx == i
        tier, models = MAKES[name]
        j = np.minimum((pick[rows] * len(models)).astype(int), len(models) - 1)
        model[rows] = [models[k][0] for k in j]
        model_tier[rows] = [models[k][1] for k in j]
        body[rows] = [models[k][2] for k in j]
        make_tier[rows] = tier
    age = np.minimum(rng.gamma(1.6, 2.6, n), 20).astype(int)
    listed = np.datetime64("2019-01-01") + rng.integers(0, 600, n).astype("timedelta64[D]")
    listed_year = listed.astype("datetime64[Y]").astype(int) + 1970
    year = listed_year - age
    is_new = (age == 0) & (rng.random(n) < 0.8)
    mileage = np.where(is_new, rng.integers(0, 50, n), (np.maximum(age, 0.3) * rng.lognormal(np.log(12000), 0.35, n)))
    mileage = np.round(mileage).astype(int)
    city_idx = rng.integers(0, len(CITIES), n)
    lat = np.array([c[1] for c in CITIES])[city_idx] + rng.normal(0, 0.3, n)
    lon = np.array([c[2] for c in CITIES])[city_idx] + rng.normal(0, 0.3, n)
    flags_missing = rng.random(n) < 0.48
    accidents = rng.random(n) < 0.14
    salvage = rng.random(n) < 0.01
    frame = rng.random(n) < 0.015
    hp = np.round(140 * make_tier ** 0.6 * model_tier * rng.normal(1, 0.08, n)).astype(int)
    truck = body == "Pickup Truck"

    base = 26000 * make_tier * model_tier
    depreciation = np.exp((-0.11 * age - 0.004 * age ** 2) / (1 + drift))
    wear = np.exp(-0.45 * (mileage / 100_000) ** 1.2)
    condition = np.where(flags_missing, 1.0, np.where(accidents, 0.86, 1.0) * np.where(salvage, 0.55, 1.0)
                         * np.where(frame, 0.7, 1.0))
    body_prem = np.where(truck, 1.12 + 0.02 * age, 1.0)  # trucks hold value
    price = base * (1 + drift) * depreciation * wear * condition * body_prem * REGION_PREMIUM[city_idx]
    price *= (hp / (140 * make_tier ** 0.6 * model_tier)) ** 0.5 * rng.lognormal(0, 0.16, n)
    price = np.round(np.maximum(price, 800), -1)

    def miss(p):
        return rng.random(n) < p

    out = {
        "vin": pd.Series([f"{v:017X}" for v in rng.integers(0, 2 ** 63, n)], dtype=object),
        "back_legroom": _fmt(rng.normal(37, 2, n), "{:.1f} in", miss(0.05), "--"),
        "bed": pd.Series(np.where(truck & miss(0.05), "Short", ""), dtype=object),
        "bed_height": pd.Series(np.where(truck & miss(0.3), "20.1 in", "--"), dtype=object),
        "bed_length": pd.Series(np.where(truck, "67.1 in", "--"), dtype=object),
        "body_type": pd.Series(body),
        "cabin": pd.Series(np.where(truck & miss(0.04), "Crew Cab", ""), dtype=object),
        "city": pd.Series(np.array([c[0] for c in CITIES], dtype=object)[city_idx]),
        "city_fuel_economy": _fmt(np.round(30 / model_tier ** 0.7 + rng.normal(0, 2, n)), "{:.0f}", miss(0.16)),
        "combine_fuel_economy": pd.Series([""] * n, dtype=object),
        "daysonmarket": pd.Series(rng.integers(0, 400, n).astype(str), dtype=object),
        "dealer_zip": pd.Series([f"{z:05d}" for z in rng.integers(1000, 99999, n)], dtype=object),
        "engine_cylinders": pd.Series(np.where(hp > 250, "V6", "I4"), dtype=object),
        "engine_displacement": _fmt(np.round(hp * 11, -2), "{:.1f}", miss(0.05)),
        "engine_type": pd.Series(np.where(hp > 250, "V6", "I4"), dtype=object),
        "exterior_color": pd.Series(rng.choice(COLORS, n)),
        "franchise_dealer": _bools(rng.random(n) < 0.8),
        "franchise_make": pd.Series(np.where(miss(0.2), "", make), dtype=object),
        "front_legroom": _fmt(rng.normal(42, 1.2, n), "{:.1f} in", miss(0.05), "--"),
        "fuel_tank_volume": _fmt(rng.normal(16, 3, n), "{:.1f} gal", miss(0.05), "--"),
        "fuel_type": pd.Series(np.where(make == "Tesla", "Electric", "Gasoline"), dtype=object),
        "height": _fmt(rng.normal(62, 6, n), "{:.1f} in", miss(0.05), "--"),
        "highway_fuel_economy": _fmt(np.round(36 / model_tier ** 0.7 + rng.normal(0, 2, n)), "{:.0f}", miss(0.16)),
        "horsepower": _fmt(hp, "{:.1f}", miss(0.05)),
        "interior_color": pd.Series(rng.choice(COLORS, n)),
        "is_certified": pd.Series([""] * n, dtype=object),
        "is_cpo": pd.Series(np.where(rng.random(n) < 0.06, "True", ""), dtype=object),
        "is_new": _bools(is_new),
        "is_oemcpo": pd.Series(np.where(rng.random(n) < 0.05, "True", ""), dtype=object),
        "latitude": pd.Series(np.round(lat, 4).astype(str), dtype=object),
        "length": _fmt(rng.normal(190, 12, n), "{:.1f} in", miss(0.05), "--"),
        "listed_date": pd.Series(listed.astype(str), dtype=object),
        "listing_color": pd.Series(rng.choice(COLORS, n)),
        "listing_id": pd.Series((id_offset + np.arange(n)).astype(str), dtype=object),
        "longitude": pd.Series(np.round(lon, 4).astype(str), dtype=object),
        "main_picture_url": pd.Series([f"https://static.example/pics/{i}.jpg" for i in range(n)], dtype=object),
        "major_options": pd.Series(np.where(miss(0.3), "", "['Backup Camera', 'Bluetooth']"), dtype=object),
        "make_name": pd.Series(make),
        "maximum_seating": _fmt(np.where(body == "SUV / Crossover", 7, 5), "{} seats", miss(0.05), "--"),
        "mileage": pd.Series(mileage.astype(str), dtype=object),
        "model_name": pd.Series(model),
        "owner_count": _fmt(np.maximum(1, age // 4), "{}", miss(0.5) | is_new),
        "price": pd.Series(price.astype(int).astype(str), dtype=object),
        "savings_amount": pd.Series(rng.integers(0, 2000, n).astype(str), dtype=object),
        "seller_rating": _fmt(rng.uniform(2.5, 5, n), "{:.2f}", miss(0.02)),
        "sp_id": pd.Series(rng.integers(1000, 400000, n).astype(str), dtype=object),
        "sp_name": pd.Series(np.array(["Auto Mall", "Smith Motors, Inc.", "Joe's \"Best\" Cars"], dtype=object)[
            rng.integers(0, 3, n)]),
        "transmission": pd.Series(np.where(rng.random(n) < 0.9, "A", "M"), dtype=object),
        "transmission_display": pd.Series(np.where(rng.random(n) < 0.9, "Automatic", "6-Speed Manual"), dtype=object),
        "trimId": pd.Series([f"t{v}" for v in rng.integers(10000, 99999, n)], dtype=object),
        "trim_name": pd.Series(rng.choice(["Base", "LE", "SE", "Sport", "Limited"], n)),
        "vehicle_damage_category": pd.Series([""] * n, dtype=object),
        "wheel_system": pd.Series(rng.choice(["FWD", "AWD", "4WD", "RWD"], n)),
        "wheel_system_display": pd.Series(rng.choice(["Front-Wheel Drive", "All-Wheel Drive"], n)),
        "wheelbase": _fmt(rng.normal(110, 8, n), "{:.1f} in", miss(0.05), "--"),
        "width": _fmt(rng.normal(73, 3, n), "{:.1f} in", miss(0.05), "--"),
        "year": pd.Series(year.astype(str), dtype=object),
    }
    power_rpm, torque_rpm = rng.integers(50, 66, n) * 100, rng.integers(15, 45, n) * 100
    out["power"] = pd.Series([f"{h} hp @ {r:,} RPM" for h, r in zip(hp, power_rpm, strict=True)], dtype=object)
    out["power"][miss(0.15)] = ""
    out["torque"] = pd.Series([f"{round(h * 1.1)} lb-ft @ {r:,} RPM" for h, r in zip(hp, torque_rpm, strict=True)],
                              dtype=object)
    out["torque"][miss(0.17)] = ""
    flag_values = {"fleet": rng.random(n) < 0.2, "frame_damaged": frame, "has_accidents": accidents,
                   "isCab": rng.random(n) < 0.2, "salvage": salvage, "theft_title": rng.random(n) < 0.005}
    for f in FLAGS:  # the six accident and title flags are missing together
        out[f] = pd.Series(np.where(flags_missing, "", _bools(flag_values[f])), dtype=object)
    out["description"] = pd.Series([
        f'{y} {m} {mo}, clean, "{t}" package.\nCall 555-0100, ask for Sam. 100% financing, no hassle!'
        for y, m, mo, t in zip(year, make, model, out["trim_name"], strict=True)], dtype=object)
    return pd.DataFrame(out)[COLUMNS]


def _unquoted(v) -> str:
    """A value as the broken export writes it: no quotes, no newlines, no commas inside a field."""
    return str(v).replace('"', "'").replace("\n", " ").replace(",", ";")


def broken_lines(rng: np.random.Generator, good: pd.DataFrame) -> list[str]:
    """Raw CSV lines broken the ways real exports break; `good` supplies realistic values to break: a price of 0 and
    one far too high, a year in words, a row cut short, a stray quote inside an unquoted field."""
    return break_rows(good, COLUMNS, [{"price": "0"}, {"price": "99999999"}, {"year": "unknown"}, 40,
                                      {"trim_name": 'Sport 17" wheels'}], text=_unquoted)
