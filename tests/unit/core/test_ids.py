from core.ids import MessageIds


class StepClock:
    def __init__(self, times):
        self.times = list(times)

    def now_ms(self):
        return self.times.pop(0) if len(self.times) > 1 else self.times[0]


def test_ids_increase_even_when_the_clock_steps_back():
    ids = MessageIds(StepClock([1000, 1000, 999, 1001, 5]))
    got = [ids.next() for _ in range(5)]
    assert [i for i, _ in got] == sorted(i for i, _ in got)
    assert len({i for i, _ in got}) == 5
    assert all(len(i) == 24 for i, _ in got)


def test_ids_of_two_processes_never_collide():
    a, b = MessageIds(StepClock([7])), MessageIds(StepClock([7]))
    assert {a.next()[0] for _ in range(100)}.isdisjoint({b.next()[0] for _ in range(100)})
