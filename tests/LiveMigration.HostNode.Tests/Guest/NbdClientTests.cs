using LiveMigration.HostNode.Guest;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.Guest;

public sealed class NbdClientTests : IAsyncLifetime
{
    private QemuNbdTestBed _bed = null!;

    public async Task InitializeAsync()
    {
        _bed = await QemuNbdTestBed.CreateAsync(size: 8 << 20);
        await _bed.StartNbdAsync();
    }

    public async Task DisposeAsync() => await _bed.DisposeAsync();

    [Fact]
    public async Task Handshake_reports_the_export_size_and_a_write_reads_back_after_flush()
    {
        await using var client = await NbdClient.ConnectAsync(_bed.SocketPath, QemuNbdTestBed.ExportName);
        Assert.Equal(8L << 20, client.ExportSize);
        Assert.False(client.IsReadOnly);
        Assert.True(client.SupportsFlush);

        var data = new byte[3 * 4096];
        new Random(7).NextBytes(data);
        await client.WriteAsync(65536, data);
        await client.WriteAsync(65536 + data.Length, data.AsMemory(0, 4096), fua: client.SupportsFua);
        await client.FlushAsync();

        var back = new byte[data.Length];
        await client.ReadAsync(65536, back);
        Assert.Equal(data, back);
        var fuaBack = new byte[4096];
        await client.ReadAsync(65536 + data.Length, fuaBack);
        Assert.Equal(data.AsSpan(0, 4096).ToArray(), fuaBack);

        var untouched = new byte[4096];
        untouched[0] = 0xFF;
        await client.ReadAsync(1 << 20, untouched);
        Assert.All(untouched, b => Assert.Equal(0, b));
    }

    [Fact]
    public async Task A_second_connection_sees_the_first_ones_writes()
    {
        var data = Enumerable.Range(0, 4096).Select(i => (byte)(i * 31)).ToArray();
        await using (var writer = await NbdClient.ConnectAsync(_bed.SocketPath, QemuNbdTestBed.ExportName))
        {
            await writer.WriteAsync(8192, data);
            await writer.FlushAsync();
        }
        await using var reader = await NbdClient.ConnectAsync(_bed.SocketPath, QemuNbdTestBed.ExportName);
        var back = new byte[4096];
        await reader.ReadAsync(8192, back);
        Assert.Equal(data, back);
    }

    [Fact]
    public async Task An_unknown_export_name_is_refused_with_a_clear_error()
    {
        var error = await Assert.ThrowsAsync<OperationFailedException>(() =>
            NbdClient.ConnectAsync(_bed.SocketPath, "no-such-export"));
        Assert.Equal(ErrorCodes.IoError, error.Code);
        Assert.Contains("no-such-export", error.Message);
        Assert.Contains("NBD_REP_ERR_UNKNOWN", error.Message);

        // the server is still fine for a correct name afterwards
        await using var client = await NbdClient.ConnectAsync(_bed.SocketPath, QemuNbdTestBed.ExportName);
        Assert.Equal(8L << 20, client.ExportSize);
    }

    [Fact]
    public async Task A_request_outside_the_export_is_refused_before_it_is_sent()
    {
        await using var client = await NbdClient.ConnectAsync(_bed.SocketPath, QemuNbdTestBed.ExportName);
        var error = await Assert.ThrowsAsync<OperationFailedException>(() => client.WriteAsync((8 << 20) - 100, new byte[4096]));
        Assert.Equal(ErrorCodes.InvalidArgument, error.Code);
        Assert.True(client.IsConnected);
    }

    [Fact]
    public async Task No_server_on_the_socket_is_an_io_error()
    {
        var error = await Assert.ThrowsAsync<OperationFailedException>(() =>
            NbdClient.ConnectAsync(Path.Combine(_bed.SocketFolder, "absent.sock"), QemuNbdTestBed.ExportName));
        Assert.Equal(ErrorCodes.IoError, error.Code);
        Assert.Contains("absent.sock", error.Message);
    }

    [Fact]
    public async Task A_killed_server_fails_the_next_request_quickly_instead_of_hanging()
    {
        var client = await NbdClient.ConnectAsync(_bed.SocketPath, QemuNbdTestBed.ExportName, TimeSpan.FromSeconds(10));
        await using (client)
        {
            await client.WriteAsync(0, new byte[4096]);
            await _bed.KillNbdAsync();
            var started = DateTime.UtcNow;
            var error = await Assert.ThrowsAsync<OperationFailedException>(async () =>
            {
                // the first write may still fit into the socket buffer; the reply never comes
                for (var i = 0; i < 3; i++)
                    await client.WriteAsync(4096, new byte[4096]);
            });
            Assert.Equal(ErrorCodes.IoError, error.Code);
            Assert.True(DateTime.UtcNow - started < TimeSpan.FromSeconds(5), $"took {DateTime.UtcNow - started}");
            Assert.False(client.IsConnected);
        }
    }
}
