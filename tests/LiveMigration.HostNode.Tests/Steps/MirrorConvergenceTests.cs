using LiveMigration.HostNode.Steps;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.Steps;

/// <summary>
/// When a background mirror is judged not to converge: from QEMU's counters over a window, the guest dirtying at least
/// two thirds of the copy rate (the remaining work then shrinks at a third of the copy rate or less), and after a third
/// of the window when it dirties as fast as the copy runs or faster (the remaining work never shrinks); and when a mirror
/// in any mode cannot converge at all (its remaining work not shrinking for the stall window), given up with its numbers.
/// </summary>
public sealed class MirrorConvergenceTests
{
    private const long MiB = 1L << 20;
    private static readonly DateTimeOffset T0 = new(2026, 12, 3, 10, 0, 0, TimeSpan.Zero);
    private static readonly ImageId Drive = ImageId.New();

    private static BlockJobInfo Job(long offset, long length, BlockJobPhase phase = BlockJobPhase.Running, long speed = 0) =>
        new("mirror-x", Drive, phase, offset, length, speed);

    /// <summary>Feeds one read a second: the copy advances <paramref name="copied"/> and the guest dirties <paramref name="dirtied"/> MiB each second.</summary>
    private static List<MirrorVerdict?> Run(MirrorConvergence watch, int seconds, long copied, long dirtied, CopyMode mode = CopyMode.Background,
        long start = 100, long speed = 0)
    {
        var verdicts = new List<MirrorVerdict?>();
        for (var s = 0; s <= seconds; s++)
            verdicts.Add(watch.Observe(T0.AddSeconds(s), Job(s * copied * MiB, (start + s * dirtied) * MiB, speed: speed), mode));
        return verdicts;
    }

    [Fact]
    public void A_guest_dirtying_faster_than_the_copy_is_judged_after_a_third_of_the_window()
    {
        var verdicts = Run(new MirrorConvergence(TimeSpan.FromSeconds(10)), 12, copied: 8, dirtied: 12);
        Assert.All(verdicts.Take(4), Assert.Null);
        Assert.False(verdicts[4]!.GivesUp);
        var why = verdicts[4]!.Why;
        Assert.Contains("copied 8.0 MiB/s", why);
        Assert.Contains("dirtied 12.0 MiB/s", why);
        Assert.Contains("never shrink", why);
    }

    [Fact]
    public void Two_thirds_of_the_copy_rate_is_where_it_turns_and_says_how_long_it_would_take()
    {
        Assert.All(Run(new MirrorConvergence(TimeSpan.FromSeconds(5)), 20, copied: 30, dirtied: 19), Assert.Null);
        // it still shrinks: judged only once a whole window was seen
        var slow = Run(new MirrorConvergence(TimeSpan.FromSeconds(5)), 6, copied: 30, dirtied: 20, start: 1000);
        Assert.All(slow.Take(5), Assert.Null);
        Assert.Contains("would take", slow[5]!.Why);
    }

    [Fact]
    public void A_write_blocking_mirror_a_ready_one_and_a_stalled_one_are_not_judged_by_the_window()
    {
        Assert.All(Run(new MirrorConvergence(TimeSpan.FromSeconds(2)), 10, copied: 1, dirtied: 50, CopyMode.WriteBlocking), Assert.Null);
        Assert.All(Run(new MirrorConvergence(TimeSpan.FromSeconds(2)), 10, copied: 0, dirtied: 0), Assert.Null);
        var ready = new MirrorConvergence(TimeSpan.FromSeconds(1));
        for (var s = 0; s < 5; s++) Assert.Null(ready.Observe(T0.AddSeconds(s), Job(s * MiB, (10 + 5 * s) * MiB, BlockJobPhase.Ready), CopyMode.Background));
    }

    [Fact]
    public void A_mirror_whose_remaining_work_does_not_shrink_for_the_stall_window_is_given_up_with_its_numbers()
    {
        // write-blocking without a limit, its destination no longer answering: the guest's writes pass through (offset
        // and length grow alike), what is left stays 100 MiB
        var verdicts = Run(new MirrorConvergence(TimeSpan.FromSeconds(2), TimeSpan.FromSeconds(30)), 31, copied: 3, dirtied: 3,
            CopyMode.WriteBlocking);
        Assert.All(verdicts.Take(30), Assert.Null);
        var gaveUp = verdicts[30]!;
        Assert.True(gaveUp.GivesUp);
        Assert.Contains("cannot converge", gaveUp.Why);
        Assert.Contains("never went below 100.0 MiB", gaveUp.Why);
        Assert.Contains("copied 3.0 MiB/s", gaveUp.Why);
        Assert.Contains("dirtied 3.0 MiB/s", gaveUp.Why);
        Assert.Contains("no speed limit", gaveUp.Why);

        // a background job that copies nothing and sees nothing dirtied alike, and its limit is named
        var stalled = Run(new MirrorConvergence(TimeSpan.FromSeconds(2), TimeSpan.FromSeconds(20)), 20, copied: 0, dirtied: 0, speed: 8 * MiB);
        Assert.All(stalled.Take(20), Assert.Null);
        Assert.True(stalled[20]!.GivesUp);
        Assert.Contains("speed limit 8.0 MiB/s", stalled[20]!.Why);
    }

    [Fact]
    public void Under_a_low_limit_QEMUs_rest_after_each_burst_is_no_stall_and_a_new_speed_starts_the_watch_again()
    {
        // 64 KiB/s: QEMU copies 16 MiB at once, then rests 256 s; the stall window (20 s) stretches to two rests
        var watch = new MirrorConvergence(TimeSpan.FromSeconds(2), TimeSpan.FromSeconds(20));
        const long speed = 64 * 1024;
        for (var s = 0; s <= 1200; s += 5)
        {
            var offset = (s / 256 + 1) * 16 * MiB;
            Assert.Null(watch.Observe(T0.AddSeconds(s), Job(offset, 200 * MiB, speed: speed), CopyMode.WriteBlocking));
        }
        // nothing copied for 511 s at that limit: more than two rests, a stall
        var stuck = new MirrorConvergence(TimeSpan.FromSeconds(2), TimeSpan.FromSeconds(20));
        Assert.Null(stuck.Observe(T0, Job(16 * MiB, 200 * MiB, speed: speed), CopyMode.WriteBlocking));
        Assert.Null(stuck.Observe(T0.AddSeconds(511), Job(16 * MiB, 200 * MiB, speed: speed), CopyMode.WriteBlocking));
        Assert.True(stuck.Observe(T0.AddSeconds(513), Job(16 * MiB, 200 * MiB, speed: speed), CopyMode.WriteBlocking)!.GivesUp);
        // an operator lowers the speed half-way through a wait: the watch starts again at the new speed
        var slowed = new MirrorConvergence(TimeSpan.FromSeconds(2), TimeSpan.FromSeconds(20));
        Assert.Null(slowed.Observe(T0, Job(16 * MiB, 200 * MiB, speed: 8 * MiB), CopyMode.WriteBlocking));
        Assert.Null(slowed.Observe(T0.AddSeconds(15), Job(16 * MiB, 200 * MiB, speed: 8 * MiB), CopyMode.WriteBlocking));
        Assert.Null(slowed.Observe(T0.AddSeconds(19), Job(16 * MiB, 200 * MiB, speed: 1 * MiB), CopyMode.WriteBlocking));
        Assert.Null(slowed.Observe(T0.AddSeconds(40), Job(16 * MiB, 200 * MiB, speed: 1 * MiB), CopyMode.WriteBlocking));
        Assert.True(slowed.Observe(T0.AddSeconds(52), Job(16 * MiB, 200 * MiB, speed: 1 * MiB), CopyMode.WriteBlocking)!.GivesUp);
    }

    [Fact]
    public void A_slow_mirror_that_still_shrinks_is_never_given_up_and_a_dip_resets_the_stall()
    {
        // write-blocking at 1 MiB/s: slow, but every read has less left
        Assert.All(Run(new MirrorConvergence(TimeSpan.FromSeconds(2), TimeSpan.FromSeconds(5)), 60, copied: 1, dirtied: 0,
            CopyMode.WriteBlocking, start: 500, speed: MiB), Assert.Null);
        // what is left stays for 9 s, shrinks once, stays again for 9 s: each time under the 10 s stall window
        var watch = new MirrorConvergence(TimeSpan.FromSeconds(2), TimeSpan.FromSeconds(10));
        for (var s = 0; s < 10; s++) Assert.Null(watch.Observe(T0.AddSeconds(s), Job(0, 100 * MiB), CopyMode.WriteBlocking));
        for (var s = 10; s < 20; s++) Assert.Null(watch.Observe(T0.AddSeconds(s), Job(1 * MiB, 100 * MiB), CopyMode.WriteBlocking));
        Assert.True(watch.Observe(T0.AddSeconds(20), Job(1 * MiB, 100 * MiB), CopyMode.WriteBlocking)!.GivesUp);
        // READY ends any watch
        Assert.Null(watch.Observe(T0.AddSeconds(21), Job(100 * MiB, 100 * MiB, BlockJobPhase.Ready), CopyMode.WriteBlocking));
    }

    [Fact]
    public void The_length_QEMU_measures_at_the_start_is_not_taken_for_guest_writes()
    {
        var watch = new MirrorConvergence(TimeSpan.FromSeconds(2));
        // before the job has measured its work it reports 0 of 0; then 100 MiB appear at once
        Assert.Null(watch.Observe(T0, Job(0, 0), CopyMode.Background));
        for (var s = 1; s <= 6; s++)
            Assert.Null(watch.Observe(T0.AddSeconds(s), Job(s * 10 * MiB, 100 * MiB), CopyMode.Background));
    }

    [Fact]
    public void A_job_started_again_starts_a_new_window()
    {
        var watch = new MirrorConvergence(TimeSpan.FromSeconds(3));
        Assert.Null(watch.Observe(T0, Job(50 * MiB, 200 * MiB), CopyMode.Background));
        // offset went back: another job; reads of its own are needed before any verdict
        Assert.Null(watch.Observe(T0.AddSeconds(0.5), Job(0, 100 * MiB), CopyMode.Background));
        Assert.Null(watch.Observe(T0.AddSeconds(1), Job(1 * MiB, 110 * MiB), CopyMode.Background));
        Assert.NotNull(watch.Observe(T0.AddSeconds(2), Job(3 * MiB, 130 * MiB), CopyMode.Background));
    }
}
