using LiveMigration.Shared.Processes;

namespace LiveMigration.Shared.Tests.Processes;

/// <summary>The one parser of /proc/PID/stat: fields counted from the command name's last ')', on real lines and on this process.</summary>
public sealed class ProcStatTests
{
    // A real line (a qemu-img convert's), fields 1-52
    private const string QemuImg =
        "4242 (qemu-img) S 1 4242 4242 0 -1 4194560 2315 0 0 0 37 112 0 0 20 0 3 0 987654 150000000 4000 " +
        "18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0";

    [Fact]
    public void The_fields_are_read_by_their_number_in_proc5()
    {
        var stat = ProcStat.Parse(QemuImg)!;
        Assert.Equal(4242, stat.Pid);
        Assert.Equal('S', stat.State);
        Assert.Equal(1, stat.ParentPid);
        Assert.Equal(37, stat.UserTicks);
        Assert.Equal(112, stat.SystemTicks);
        Assert.Equal(987654, stat.StartTicks);
        Assert.Equal(TimeSpan.FromSeconds(1.49), stat.CpuTime);
        Assert.False(stat.IsZombie);
    }

    [Fact]
    public void A_command_name_with_spaces_and_parentheses_does_not_shift_the_fields()
    {
        var line = QemuImg.Replace("(qemu-img) S 1", "(a (b) c) Z 77");
        var stat = ProcStat.Parse(line)!;
        Assert.Equal(77, stat.ParentPid);
        Assert.Equal(987654, stat.StartTicks);
        Assert.True(stat.IsZombie);
    }

    [Theory]
    [InlineData("")]
    [InlineData("4242 (qemu-img) S 1 4242")] // cut short
    [InlineData("4242 qemu-img S 1 4242 4242 0 -1 4194560 2315 0 0 0 37 112 0 0 20 0 3 0 987654")] // no name in parentheses
    [InlineData("x (qemu-img) S 1 4242 4242 0 -1 4194560 2315 0 0 0 37 112 0 0 20 0 3 0 987654")] // no pid
    [InlineData("4242 (qemu-img) S 1 4242 4242 0 -1 4194560 2315 0 0 0 37 112 0 0 20 0 3 0 soon")] // no start time
    public void What_is_not_a_stat_line_reads_as_nothing(string line) => Assert.Null(ProcStat.Parse(line));

    [Fact]
    public void This_process_reads_as_itself_and_a_pid_nobody_has_as_gone()
    {
        var self = ProcStat.Read(Environment.ProcessId)!;
        Assert.Equal(Environment.ProcessId, self.Pid);
        Assert.False(self.IsZombie);
        Assert.True(self.StartTicks > 0);
        Assert.Equal(self.StartTicks, ProcStat.Read(Environment.ProcessId)!.StartTicks);

        Assert.Null(ProcStat.Read(0));
        Assert.Null(ProcStat.Read(int.MaxValue)); // above pid_max
        Assert.True(ProcessSignals.IsProvablyGone(int.MaxValue));
        Assert.False(ProcessSignals.IsProvablyGone(Environment.ProcessId));
        Assert.False(ProcessSignals.Send(int.MaxValue, 0));
    }
}
