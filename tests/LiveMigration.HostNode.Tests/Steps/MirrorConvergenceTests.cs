using LiveMigration.HostNode.Steps;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.Steps;

/// <summary>
/// When a background mirror is judged not to converge: from QEMU's counters over a window, the guest dirtying at least
/// two thirds of the copy rate (the remaining work then shrinks at a third of the copy rate or less), and after a third
/// of the window when it dirties as fast as the copy runs or faster (the remaining work never shrinks).
/// </summary>
public sealed class MirrorConvergenceTests
{
    private const long MiB = 1L << 20;
    private static readonly DateTimeOffset T0 = new(2026, 12, 3, 10, 0, 0, TimeSpan.Zero);
    private static readonly ImageId Drive = ImageId.New();

    private static BlockJobInfo Job(long offset, long length, BlockJobPhase phase = BlockJobPhase.Running) =>
        new("mirror-x", Drive, phase, offset, length, 0);

    /// <summary>Feeds one read a second: the copy advances <paramref name="copied"/> and the guest dirties <paramref name="dirtied"/> MiB each second.</summary>
    private static List<string?> Run(MirrorConvergence watch, int seconds, long copied, long dirtied, CopyMode mode = CopyMode.Background, long start = 100)
    {
        var verdicts = new List<string?>();
        for (var s = 0; s <= seconds; s++)
            verdicts.Add(watch.Observe(T0.AddSeconds(s), Job(s * copied * MiB, (start + s * dirtied) * MiB), mode));
        return verdicts;
    }

    [Fact]
    public void A_guest_dirtying_faster_than_the_copy_is_judged_after_a_third_of_the_window()
    {
        var verdicts = Run(new MirrorConvergence(TimeSpan.FromSeconds(10)), 12, copied: 8, dirtied: 12);
        Assert.All(verdicts.Take(4), Assert.Null);
        var why = verdicts[4];
        Assert.NotNull(why);
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
        Assert.Contains("would take", slow[5]);
    }

    [Fact]
    public void A_write_blocking_mirror_a_ready_one_and_a_stalled_one_are_never_judged()
    {
        Assert.All(Run(new MirrorConvergence(TimeSpan.FromSeconds(2)), 10, copied: 1, dirtied: 50, CopyMode.WriteBlocking), Assert.Null);
        Assert.All(Run(new MirrorConvergence(TimeSpan.FromSeconds(2)), 10, copied: 0, dirtied: 0), Assert.Null);
        var ready = new MirrorConvergence(TimeSpan.FromSeconds(1));
        for (var s = 0; s < 5; s++) Assert.Null(ready.Observe(T0.AddSeconds(s), Job(s * MiB, (10 + 5 * s) * MiB, BlockJobPhase.Ready), CopyMode.Background));
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
