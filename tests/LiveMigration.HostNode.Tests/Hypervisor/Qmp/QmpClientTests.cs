using System.Diagnostics;
using LiveMigration.HostNode.Hypervisor.Qmp;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.Hypervisor.Qmp;

public sealed class QmpClientTests : BareQemuTests
{
    private Task Signal(string signal) =>
        LiveMigration.HostNode.Processes.ProcessRunner.RunCheckedAsync("kill", [signal, Qemu.Pid.ToString()], ErrorCodes.IoError);

    [Fact]
    public async Task Negotiates_and_matches_concurrent_replies_by_id()
    {
        await using var client = await QmpClient.ConnectAsync(Qemu.Socket);
        Assert.Equal(7, client.Greeting.GetProperty("version").GetProperty("qemu").GetProperty("major").GetInt32());

        var replies = await Task.WhenAll(Enumerable.Range(0, 20).Select(i => i % 2 == 0
            ? client.ExecuteAsync("query-version")
            : client.ExecuteAsync("query-status")));

        for (var i = 0; i < replies.Length; i++)
            Assert.True(replies[i].TryGetProperty(i % 2 == 0 ? "qemu" : "status", out _), $"reply {i} belongs to another command: {replies[i]}");
    }

    [Fact]
    public async Task A_refused_command_is_a_qmp_error_naming_command_class_and_description()
    {
        await using var client = await QmpClient.ConnectAsync(Qemu.Socket);

        var error = await Assert.ThrowsAsync<OperationFailedException>(() =>
            client.ExecuteAsync("block-job-cancel", new Dictionary<string, object?> { ["device"] = "no-such-job" }));

        Assert.Equal(ErrorCodes.QmpError, error.Code);
        Assert.StartsWith("block-job-cancel: DeviceNotActive: ", error.Message);
        // QEMU's class stays readable for callers that decide on it (the node graph's CommandNotFound fallback)
        Assert.Equal("DeviceNotActive", Assert.IsType<QmpCommandException>(error.InnerException).ErrorClass);
        Assert.Contains("no-such-job", error.Message);
        // The connection is still usable after an error.
        var status = await client.ExecuteAsync("query-status");
        Assert.True(status.TryGetProperty("status", out _), $"query-status after an error answered {status}");
    }

    [Fact]
    public async Task Raises_events_and_fails_commands_once_qemu_quits()
    {
        await using var client = await QmpClient.ConnectAsync(Qemu.Socket);
        var events = new List<string>();
        var disconnected = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        client.EventReceived += e => { lock (events) events.Add(e.Name); };
        client.Disconnected += reason => disconnected.TrySetResult(reason);

        await client.ExecuteAsync("quit");
        await disconnected.Task.WaitAsync(TimeSpan.FromSeconds(10));

        lock (events) Assert.Contains("SHUTDOWN", events);
        var error = await Assert.ThrowsAsync<OperationFailedException>(() => client.ExecuteAsync("query-status"));
        Assert.Equal(ErrorCodes.VmNotRunning, error.Code);
    }

    [Fact]
    public async Task A_killed_qemu_fails_pending_and_later_commands_instead_of_hanging()
    {
        await using var client = await QmpClient.ConnectAsync(Qemu.Socket);
        // Stopping the monitor's process mid-command: SIGSTOP first so the command is surely pending, then SIGKILL.
        await Signal("-STOP");
        var pending = client.ExecuteAsync("query-status", timeout: TimeSpan.FromSeconds(60));
        await Task.Delay(100);
        Assert.False(pending.IsCompleted);
        var watch = Stopwatch.StartNew();
        await QemuTestBed.KillAsync(Qemu.Pid);

        var error = await Assert.ThrowsAsync<OperationFailedException>(() => pending.WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Equal(ErrorCodes.VmNotRunning, error.Code);
        var later = await Assert.ThrowsAsync<OperationFailedException>(() => client.ExecuteAsync("query-status"));
        Assert.Equal(ErrorCodes.VmNotRunning, later.Code);
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(10), $"took {watch.Elapsed}");
    }

    [Fact]
    public async Task A_command_without_reply_times_out_with_its_name()
    {
        await using var client = await QmpClient.ConnectAsync(Qemu.Socket);
        await Signal("-STOP");
        try
        {
            var error = await Assert.ThrowsAsync<OperationFailedException>(() =>
                client.ExecuteAsync("query-status", timeout: TimeSpan.FromMilliseconds(300)));
            Assert.Equal(ErrorCodes.Timeout, error.Code);
            Assert.Contains("query-status", error.Message);
        }
        finally
        {
            await Signal("-CONT");
        }
    }
}
